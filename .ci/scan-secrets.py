#!/usr/bin/env python3
"""Fails if a private key, token or node data file is committed.

Scans every file `git ls-files` lists (the committed tree, not the working dir's ignored
files). What counts as a finding:

- a PEM private-key block whose body is real base64 (a line of 40+ base64 characters), so a
  format constant like "-----BEGIN PRIVATE KEY-----\\nAAAA" in a parser test is not one;
- well-known token shapes: AWS access keys, GitHub/GitLab/Slack/Google/OpenAI tokens, JWTs,
  private keys in OpenSSH format;
- files whose name says they hold key material or a node's state: *.key, *.p12, *.pfx,
  id_rsa/id_ed25519, palyra.db, a data dir's keys/ or identity/ entries.

Usage: .ci/scan-secrets.py [repo-dir]. Exit 0 = clean, 1 = findings (each printed with
file:line and the rule, never the matched secret itself).
"""

import re
import subprocess
import sys
from pathlib import Path

TOKEN_RULES = [
    ("aws access key id", re.compile(rb"\b(AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("github token", re.compile(rb"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("github fine-grained token", re.compile(rb"\bgithub_pat_[A-Za-z0-9_]{60,}\b")),
    ("gitlab token", re.compile(rb"\bglpat-[A-Za-z0-9_-]{20,}\b")),
    ("slack token", re.compile(rb"\bxox[abposr]-[A-Za-z0-9-]{10,}\b")),
    ("google api key", re.compile(rb"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("openai/anthropic key", re.compile(rb"\bsk-(ant-|proj-)?[A-Za-z0-9_-]{32,}\b")),
    ("json web token", re.compile(rb"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")),
    # Split so that this file does not match itself.
    ("openssh private key", re.compile(rb"-----BEGIN OPENSSH " + rb"PRIVATE KEY-----")),
]
PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+ )?PRIVATE KEY-----")
BASE64_LINE = re.compile(rb"^[\s\"'`]*[A-Za-z0-9+/]{40,}={0,2}")
BAD_NAMES = [
    re.compile(r"(^|/)[^/]+\.(key|p12|pfx|jks|keystore)$"),
    re.compile(r"(^|/)id_(rsa|dsa|ecdsa|ed25519)$"),
    re.compile(r"(^|/)palyra\.db(-wal|-shm)?$"),
    re.compile(r"(^|/)keys/root\.key$"),
    re.compile(r"(^|/)identity/(device\.identity|ca\.key|server\.key)"),
]


def main() -> int:
    repo = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    files = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z"], check=True, capture_output=True
    ).stdout.split(b"\0")
    findings = []
    scanned = 0
    for raw in files:
        if not raw:
            continue
        name = raw.decode("utf-8", "replace")
        for rule in BAD_NAMES:
            if rule.search(name):
                findings.append(f"{name}: file name says key material or node state")
        path = repo / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        scanned += 1
        lines = data.split(b"\n")
        for number, line in enumerate(lines, start=1):
            for rule_name, rule in TOKEN_RULES:
                if rule.search(line):
                    findings.append(f"{name}:{number}: {rule_name}")
            if PEM_BEGIN.search(line):
                # The key body starts on the next line, or after a literal "\n" in source code.
                after = line.split(b"PRIVATE KEY-----", 1)[1].replace(b"\\n", b"\n").split(b"\n")
                body = [after[1]] if len(after) > 1 else []
                body += lines[number : number + 2]
                if any(BASE64_LINE.match(candidate) for candidate in body):
                    findings.append(f"{name}:{number}: PEM private key with a real body")
    for finding in findings:
        print(f"secret scan: {finding}")
    print(f"secret scan: {scanned} committed files, {len(findings)} findings")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
