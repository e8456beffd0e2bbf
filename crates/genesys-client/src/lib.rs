//! genesys-client
