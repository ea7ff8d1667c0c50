// DO NOT EDIT. Written by scripts/gen-proto.sh.

/// The fingerprint (scripts/proto-hash.sh) of the Proto/ sources this
/// directory was generated from; a test compares it with Proto/ as it is now.
package let generatedFromProtoSourcesSHA256 = "e9d6eb84f095ce7d2ba7e1c7db03627e854beb8a124ade6c43d52cbfc73ee978"
