"""XML text and attribute escaping for the domain and snapshot XML this provider writes.

The same output as ``xml.sax.saxutils.escape`` / ``quoteattr``, without importing that module:
it imports ``urllib.request`` (and with it ``http.client``, ``ssl`` and ``email``), about 10 ms
of every command that loads this provider (``vmsandbox exec``, ``list``). tests/unit/test_xmltext.py
checks both against the standard library's.
"""
from __future__ import annotations


def escape(data: str) -> str:
    """``&``, ``<`` and ``>`` as entities (text content)."""
    return data.replace("&", "&amp;").replace(">", "&gt;").replace("<", "&lt;")


def quoteattr(data: str) -> str:
    """An attribute value with its quotes: entities for ``& < >`` and newline, CR and tab; double
    quotes unless the value holds one and no single quote."""
    data = escape(data).replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    if '"' in data:
        if "'" in data:
            return '"%s"' % data.replace('"', "&quot;")
        return "'%s'" % data
    return '"%s"' % data


__all__ = ["escape", "quoteattr"]
