"""ggl: audit federated-learning defences against Generative Gradient Leakage."""
__version__ = "0.1.0"
