//! genesys-sim
