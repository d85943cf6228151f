"""The provider: ProviderClient (the only code that speaks its protocol), the HTTP transport,
the outgoing proxy and the sandbox's simulator."""
