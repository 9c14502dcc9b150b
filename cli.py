"""tinygrad-rnn: train recurrent cells and look at their gradients.

Thin on purpose: parse options, call the library, print.
"""
import click

import tinygrad_rnn as tr


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(tr.__version__, prog_name="tinygrad-rnn")
def main():
    """A small lab for recurrent networks: cells, training and gradient diagnostics."""


if __name__ == "__main__":
    main()
