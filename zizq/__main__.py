"""`python -m zizq` behaves exactly like the `zizq` executable."""

from zizq.cli import main

if __name__ == "__main__":
    main()
