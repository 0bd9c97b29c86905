//! Building a gateway from a TOML file (work in progress).
