#!/usr/bin/env python3
"""Write a Wikipedia-style multistream .bz2 (header stream, 100 pages per stream, footer) from a
pages-articles dump, its pages repeated N times.

Usage: python3 scripts/bench/make_multistream.py IN.xml.bz2 OUT.xml.bz2 [N]
"""
import bz2
import sys

src, dst = sys.argv[1], sys.argv[2]
repeat = int(sys.argv[3]) if len(sys.argv) > 3 else 1
xml = bz2.open(src, "rt", encoding="utf-8").read()
first = xml.index("  <page>")
end = xml.rindex("</mediawiki>")
pages = xml[first:end].split("  <page>")[1:]
pages = ["  <page>" + p for p in pages] * repeat
with open(dst, "wb") as out:
    out.write(bz2.compress(xml[:first].encode()))
    for i in range(0, len(pages), 100):
        out.write(bz2.compress("".join(pages[i:i + 100]).encode()))
    out.write(bz2.compress(xml[end:].encode()))
