"""`python -m raybench ...` is the `raybench` command."""
import sys

from raybench.cli import main

sys.exit(main())
