"""The media relay: the host's rtpengine, its interfaces per endpoint side, its statistics."""
