"""What comes back: delivery reports, what they queue for the teams, webhook signing and the
worker that delivers them, callback URL rules and DLR URL tokens."""
