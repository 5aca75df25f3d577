"""The provider's own XML escaping gives what the standard library's gives."""
from xml.sax import saxutils

import pytest

from vmsandbox.providers.libvirt import xmltext

SAMPLES = ["", "plain", "a&b<c>d", 'say "hi"', "it's", "both ' and \"", "line\nbreak\rcr\ttab", "&amp; already",
           "/var/tmp/x y/disk.qcow2", "\x1b[31m<script>'\"&", "ünïcødé ⟨⟩"]


@pytest.mark.parametrize("value", SAMPLES)
def test_same_as_saxutils(value):
    assert xmltext.escape(value) == saxutils.escape(value)
    assert xmltext.quoteattr(value) == saxutils.quoteattr(value)
