"""Applications built on trained models: the dog-breed app (and, later, style transfer and the web page)."""
