// DO NOT EDIT. Written by scripts/gen-proto.sh.

/// The fingerprint (scripts/proto-hash.sh) of the Proto/ sources this
/// directory was generated from; a test compares it with Proto/ as it is now.
package let generatedFromProtoSourcesSHA256 = "4cf226a32f2625770fe21730f23f73f7d7d9096f76222743f4ab5b6012ea74f4"
