"""Development tooling, never shipped in a deployable: the local platform (a redis-server of its
own, loopback sandboxes for SMTP, the CRM, the payment gateway and Sentry, the platform's
processes), shared by the tests, the local stack and the benchmark; and the pytest plugin."""
