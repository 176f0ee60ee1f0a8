#!/usr/bin/env python3
"""test-manpage: virtsnapfs(1) and `virtsnapfs --help` list the same options.

Fails when an option printed by --help is missing from the OPTIONS section
of doc/virtsnapfs.1 or the other way round, when an -o option has no
default in either, when the page makes groff warn, or when --version does
not print the project's version.  Usage: test-manpage.py VIRTSNAPFS PAGE
VERSION.
"""

import re
import shlex
import shutil
import subprocess
import sys

# "-h, --help", "-o uri=URI", "-o revert=keep|discard keep the ...": the
# option names at the start of a line, up to the first word that is not one.
OPTION = re.compile(r"(-o [a-z_]+(?:=\S*)?|--?[A-Za-z][A-Za-z-]*)(?:,\s*|\s+|$)")


def option_names(text):
    """The options a help line or a rendered man page tag starts with, as
    '-x', '--long' or '-o name'."""
    names = []
    pos = 0
    while True:
        m = OPTION.match(text, pos)
        if not m:
            return names
        opt = m.group(1)
        names.append(opt.split("=")[0])
        pos = m.end()


def help_options(binary):
    out = subprocess.run([binary, "--help"], stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    opts = {}
    current = None
    in_section = False
    for line in out.splitlines():
        if line.endswith("options:"):
            in_section = True
            continue
        if not in_section or not line.strip():
            if line.strip() == "" and in_section and opts:
                in_section = False
            continue
        if line.lstrip().startswith("-"):
            current = option_names(line.strip())
            for name in current:
                opts[name] = line
        elif current:
            for name in current:
                opts[name] += "\n" + line
    return opts


FONT_ALTERNATING = (".BR", ".BI", ".IB", ".RB", ".IR", ".RI")


def render_tag(line):
    """A man macro line (.B, .BI ...) as the text it shows."""
    macro, _, rest = line.partition(" ")
    args = shlex.split(rest.replace("\\-", "-").replace("\\(em", "-"))
    return ("" if macro in FONT_ALTERNATING else " ").join(args)


def man_options(page):
    opts = {}
    section = None
    tag_next = False
    current = []
    for line in open(page, encoding="utf-8"):
        line = line.rstrip("\n")
        if line.startswith(".SH"):
            section = line[3:].strip().strip('"')
            continue
        if section != "OPTIONS":
            continue
        if line in (".TP", ".TQ"):
            tag_next = True
            if line == ".TP":
                current = []
            continue
        if tag_next:
            tag_next = False
            names = option_names(render_tag(line))
            if not names:
                raise AssertionError("man page: option tag %r names no option" % line)
            current += names
            for name in names:
                opts[name] = ""
            continue
        if line.startswith(".PP"):
            current = []
        for name in current:
            opts[name] += line + "\n"
    return opts


def main():
    binary, page, version = sys.argv[1:4]
    failures = []
    helped = help_options(binary)
    documented = man_options(page)
    print("# --help:", sorted(helped))
    print("# man page:", sorted(documented))
    for name in sorted(set(helped) - set(documented)):
        failures.append("%s is in --help but not in the man page's OPTIONS" % name)
    for name in sorted(set(documented) - set(helped)):
        failures.append("%s is in the man page's OPTIONS but not in --help" % name)
    for name in sorted(set(helped) & set(documented)):
        if not name.startswith("-o "):
            continue
        if "default" not in helped[name].lower():
            failures.append("--help gives no default for %s" % name)
        if "default" not in documented[name].lower():
            failures.append("the man page gives no default for %s" % name)

    out = subprocess.run([binary, "--version"], stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    if not out.startswith("virtsnapfs %s\n" % version):
        failures.append("--version prints %r, not virtsnapfs %s" % (out, version))
    if ('"virtsnapfs %s"' % version) not in open(page, encoding="utf-8").read():
        failures.append("the man page's .TH does not name version %s" % version)

    if shutil.which("groff"):
        p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", page],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0 or p.stderr:
            failures.append("groff warns about the man page:\n" + p.stderr)
    else:
        failures.append("groff missing (package groff-base)")

    for f in failures:
        print("not ok -", f)
    if failures:
        sys.exit(1)
    print("ok - %d options in --help and the man page agree, each -o option with a default"
          % len(helped))


main()
