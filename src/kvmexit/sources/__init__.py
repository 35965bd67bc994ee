"""Event sources: each yields :class:`kvmexit.model.Snapshot` objects.

- :mod:`.live`: bcc/BPF, aggregation in the kernel (imports bcc lazily).
- :mod:`.trace`: recorded trace files, paired in Python by the same rules.
"""
