"""Print "URI KEYRING" of the first apt source on this machine that serves SUITE's main component.

Reads /etc/apt/sources.list.d/*.sources (deb822) and /etc/apt/sources.list (one-line format), so
the box is built from whatever Debian mirror the machine itself uses; no mirror is written into the
recipe. KEYRING is the source's Signed-By file, or "-" when it names none.
Usage: python3 apt_source.py SUITE [APT_ETC]
"""
import glob
import os
import re
import sys


def deb822(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    for stanza in re.split(r"\n\s*\n", text):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        yield (fields.get("types", "").split(), fields.get("uris", "").split(),
               fields.get("suites", "").split(), fields.get("components", "").split(),
               fields.get("signed-by", ""))


def one_line(path):
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.split("#", 1)[0].strip()
        options = re.search(r"\[([^\]]*)\]", line)
        signed = re.search(r"signed-by=(\S+)", options.group(1)) if options else None
        words = re.sub(r"\[[^\]]*\]", " ", line).split()
        if len(words) >= 4:
            yield [words[0]], [words[1]], [words[2]], words[3:], signed.group(1) if signed else ""


def main():
    suite = sys.argv[1]
    etc = sys.argv[2] if len(sys.argv) > 2 else "/etc/apt"
    sources = [(p, deb822) for p in sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.sources")))]
    sources += [(p, one_line) for p in [os.path.join(etc, "sources.list")]
                + sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.list"))) if os.path.isfile(p)]
    for path, parse in sources:
        for types, uris, suites, components, signed_by in parse(path):
            if "deb" in types and suite in suites and "main" in components and uris:
                keyring = signed_by if signed_by.startswith("/") and os.path.isfile(signed_by) else "-"
                print(uris[0].rstrip("/"), keyring)
                return 0
    print(f"no apt source for suite {suite!r} (main) in {etc}/sources.list or sources.list.d", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
