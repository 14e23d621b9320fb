"""Integrations with other libraries; each is imported only when asked for, so zenattn never
requires them. See :mod:`zenattn.integrations.huggingface`."""
