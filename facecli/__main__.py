"""``python -m facecli`` (and ``torchrun -m facecli train ...``) runs the command-line interface."""

from facecli.cli.app import main

if __name__ == "__main__":
    main()
