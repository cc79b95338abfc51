"""Everything that talks to CentralAuth: the back-channel client (`client`) and the session-check
cache (`checker`). What CentralAuth says about a user is `core.user`."""
