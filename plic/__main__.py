"""``python -m plic`` and the ``plic`` command. A Ctrl-C while the command line is still
loading ends like one during a command: one line, exit status 130."""

import sys


def run() -> int:
    try:
        from plic.cli.main import main
    except KeyboardInterrupt:
        print("plic: interrupted", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    raise SystemExit(run())
