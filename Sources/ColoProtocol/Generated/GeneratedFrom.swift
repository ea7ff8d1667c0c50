// DO NOT EDIT. Written by scripts/gen-proto.sh.

/// The fingerprint (scripts/proto-hash.sh) of the Proto/ sources this
/// directory was generated from; a test compares it with Proto/ as it is now.
package let generatedFromProtoSourcesSHA256 = "7fb1aad27adc81ee746fb6021b35f32e86c2a9bb894ec758dbcc1c4efb82d489"
