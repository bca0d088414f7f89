"""Word timing: a CTC phone aligner on speech tokens (``model.align.aligner``), its training and evaluation."""
