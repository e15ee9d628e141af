"""app_python3 entry script: makes `trunkproxy` importable for Debian's python3 and hands
Kamailio the Router. Only stdlib-only modules of trunkproxy are imported from here."""
import os
import sys

_SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _SRC not in sys.path:
    sys.path.append(_SRC)

from trunkproxy.kamailio.kemi import Router  # noqa: E402


def mod_init():
    return Router(os.environ["TRUNKPROXY_ENDPOINT_SETTINGS"])
