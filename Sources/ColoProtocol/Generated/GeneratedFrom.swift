// DO NOT EDIT. Written by scripts/gen-proto.sh.

/// The fingerprint (scripts/proto-hash.sh) of the Proto/ sources this
/// directory was generated from; a test compares it with Proto/ as it is now.
package let generatedFromProtoSourcesSHA256 = "4d362bd05e1880c3170391c14a7aa737344848805cc55d50e62564e887152200"
