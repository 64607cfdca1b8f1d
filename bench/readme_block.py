"""Writes a benchmark's table into bench/README.md between its markers
(<!-- NAME:begin --> and <!-- NAME:end -->), or appends a new section with
the markers when they are not there yet."""
import os

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")


def write_block(name, table, new_section):
    begin, end = "<!-- %s:begin -->" % name, "<!-- %s:end -->" % name
    block = "%s\n%s\n%s" % (begin, table, end)
    with open(README) as f:
        text = f.read()
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text += "\n" + new_section + "\n\n" + block + "\n"
    with open(README, "w") as f:
        f.write(text)
