"""Teams and what bounds them: their fields, JWT verification and scopes, the tokens the gateway
mints, quota arithmetic, usage views and request rate limits."""
