"""Real stand-ins for the platform's external peers (CRM, payment gateway, SMTP).

They listen on loopback over real sockets so the demo and the tests exercise the
same client code as production; each can be told to misbehave.
"""
