"""The `wfpr` console script: it runs the wfpr command that the wheel bundles
(wfpr/bin/wfpr, built with the shim beside it), with the same arguments."""
import os
import sys
from pathlib import Path

BIN = Path(__file__).resolve().parent / "bin"


def main() -> None:
    tool = BIN / "wfpr"
    if not os.access(tool, os.X_OK):
        sys.stderr.write("wfpr: this install has no wfpr command (%s is missing: the package was built without "
                         "cmake); build it from source with `make build`\n" % tool)
        sys.exit(127)
    os.execv(str(tool), [str(tool), *sys.argv[1:]])


if __name__ == "__main__":
    main()
