//! Vault: keys, sealed store, blobs, ledger. (Under construction in issue 6.)
