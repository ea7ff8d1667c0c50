// DO NOT EDIT. Written by scripts/gen-proto.sh.

/// The fingerprint (scripts/proto-hash.sh) of the Proto/ sources this
/// directory was generated from; a test compares it with Proto/ as it is now.
package let generatedFromProtoSourcesSHA256 = "1cf813cf768cc60e609e4fe3e3f348f14a4576bca3c91c731f17939779622910"
