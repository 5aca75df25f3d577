"""paramiko, imported without ``invoke`` (about 30-50 ms of every ``vmsandbox exec`` here).

paramiko 5 imports invoke at start-up only for ``Match exec`` lines of an OpenSSH client config
(``paramiko.SSHConfig``), which vmsandbox never parses: it pins its own settings. Importing
paramiko while ``invoke`` is marked absent leaves paramiko's own fallback in place (``Match
exec`` would raise invoke's ImportError), and the mark is removed at once, so code that imports
invoke itself later gets the real one. Only ``vmsandbox.ssh`` imports paramiko, through here.
"""
import sys

if "paramiko" not in sys.modules and "invoke" not in sys.modules:
    sys.modules["invoke"] = None                 # type: ignore[assignment]   # import raises ImportError
    try:
        import paramiko
    finally:
        if sys.modules.get("invoke", 0) is None:
            del sys.modules["invoke"]
else:
    import paramiko

__all__ = ["paramiko"]
