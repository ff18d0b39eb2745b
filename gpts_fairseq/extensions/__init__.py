"""Training extensions: the protocol (``base``) and the registry (``registry.EXTENSIONS``, in
the order their hooks run). The registry is a module of its own because every extension imports
``base``: were it here, importing an extension would import the registry, which imports the
extension (a circle)."""
