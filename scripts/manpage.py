#!/usr/bin/env python3
"""Writes the manual page of fem-client(1) or femctl(1) from the command tree the binary reports.

    scripts/manpage.py .build/release/fem-client > fem-client.1
    man -l fem-client.1

The tree comes from swift-argument-parser's `--experimental-dump-help` (its generate-manual plugin needs a build
of its own; this needs only python3), so every subcommand, option and default in the page is the binary's own.
"""
import json
import os
import subprocess
import sys

EXIT_STATUS = [
    ("0", "Done."),
    ("1", "Something did not work: a broker that does not answer, a file that cannot be read, a task that failed, "
          "a check that failed. One line on standard error says what: \\fIcommand\\fR: \\fIwhat failed\\fR."),
    ("2", "What was given is not acceptable: a plan or task that does not validate, a \\-\\-param of the wrong "
          "type, a dataset the node lacks, a configuration with problems; or a task was declined."),
    ("3", "The daemon is not running (fem-client status)."),
    ("64", "A bad command line (an unknown option, a missing argument); the usage is printed."),
]

ENVIRONMENT = {
    "fem-client": [
        ("FEM_CONFIG", "The configuration file when \\-\\-config is not given (default config/fem-client.toml, "
                       "read from the current folder)."),
        ("FEM_\\fISECTION\\fR_\\fIKEY\\fR", "Overrides one configuration key (FEM_NODE_ID, FEM_LAUNCHERS_ENABLED, ...)."),
        ("FEM_BROKER_PASSWORD", "The broker password instead of broker.password_file."),
    ],
    "femctl": [
        ("FEMCTL_BROKER_URL", "amqps://user@host:port/vhost of the orchestrator account."),
        ("FEMCTL_CA_FILE, FEMCTL_CERT_FILE, FEMCTL_KEY_FILE", "TLS files (a flag wins over its variable)."),
        ("FEMCTL_PASSWORD_FILE, FEMCTL_BROKER_PASSWORD", "The broker password (the variable wins over the file)."),
    ],
}


def esc(text):
    """Roff-safe text: backslashes, and lines that would start with a control character."""
    text = (text or "").replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + l if l.startswith((".", "'")) else l) for l in text.split("\n"))


def option_synopsis(arg):
    names = [("--" if n["kind"] == "long" else "-") + n["name"] for n in arg.get("names", [])]
    name = ", ".join("\\fB" + esc(n) + "\\fR" for n in names)
    if arg["kind"] == "option":
        name += " \\fI" + esc(arg.get("valueName", "value")) + "\\fR"
    elif arg["kind"] == "positional":
        name = "\\fI" + esc(arg.get("valueName", "arg")) + "\\fR"
    return name


def command_lines(cmd, path, out):
    if not cmd.get("shouldDisplay", True) or cmd["commandName"] == "help":
        return
    full = " ".join(path + [cmd["commandName"]])
    args = [a for a in cmd.get("arguments", []) if a.get("shouldDisplay", True)
            and a.get("valueName") not in ("help", "version")]
    subs = cmd.get("subcommands", [])
    out.append(".SS " + esc(full))
    if cmd.get("abstract"):
        out.append(esc(cmd["abstract"]))
    if cmd.get("discussion"):
        out += [".PP", esc(cmd["discussion"])]
    for a in args:
        out.append(".TP")
        out.append(option_synopsis(a))
        text = a.get("abstract", "")
        if a.get("defaultValue") not in (None, "", "false"):
            text += " (default: " + a["defaultValue"] + ")"
        if a.get("isRepeating") and "repeatable" not in text.lower():
            text += " Repeatable."
        out.append(esc(text.strip()) or ".")
    for s in subs:
        command_lines(s, path + [cmd["commandName"]], out)


def page(binary):
    dump = subprocess.run([binary, "--experimental-dump-help"], check=True, capture_output=True, text=True).stdout
    root = json.loads(dump)["command"]
    name = root["commandName"]
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip() or "?"
    out = [
        '.TH %s 1 "" "%s %s" "User Commands"' % (name.upper(), esc(name), esc(version)),
        ".SH NAME",
        "%s \\- %s" % (esc(name), esc(root.get("abstract", ""))),
        ".SH SYNOPSIS",
        ".B %s" % esc(name),
        "\\fIcommand\\fR [\\fIoptions\\fR]",
        ".SH DESCRIPTION",
        esc(root.get("abstract", "")),
    ]
    if root.get("discussion"):
        out += [".PP", esc(root["discussion"])]
    out += [".PP", "Each command's options follow; \\fB%s help\\fR \\fIcommand\\fR prints the same." % esc(name),
            ".SH COMMANDS"]
    for sub in root.get("subcommands", []):
        command_lines(sub, [name], out)
    out.append(".SH EXIT STATUS")
    for code, text in EXIT_STATUS:
        out += [".TP", "\\fB%s\\fR" % code, text]
    if name in ENVIRONMENT:
        out.append(".SH ENVIRONMENT")
        for var, text in ENVIRONMENT[name]:
            out += [".TP", "\\fB%s\\fR" % var, esc(text) if "\\f" not in text else text]
    other = "femctl" if name == "fem-client" else "fem-client"
    out += [".SH SEE ALSO", "\\fB%s\\fR(1); README.md, docs/operations.md and docs/protocol.md in the sources "
            "(or /usr/share/doc/fem-client)." % other]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2 or not os.access(sys.argv[1], os.X_OK):
        sys.exit("usage: manpage.py <path to fem-client or femctl>")
    sys.stdout.write(page(sys.argv[1]))
