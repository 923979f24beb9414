"""The institution's procedures: a library of Markdown documents, searched per case."""
