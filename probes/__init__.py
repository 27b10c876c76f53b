"""Pure instruments: a model and token batches in, tensors and tidy tables out."""
