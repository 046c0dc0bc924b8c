"""The Kimi tokenizer without transformers: pre-tokenizer pattern, tiktoken file format, special
token layout, chat template, and a small BPE trainer for the embedded tiny checkpoint."""
