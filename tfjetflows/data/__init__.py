"""Jet data: schema, streaming reader, selection, representations and the tf.data pipeline."""
