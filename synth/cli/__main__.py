"""`python -m synth.cli`: the same as the `synth` command."""

from . import main

main()
