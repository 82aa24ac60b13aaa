/* Shared bits of the heliosdb native module. */
int heliosdb_native_abi_version(void) { return 1; }
