@testable import PairConfiguration
import XCTest

final class HostConfigurationTests: XCTestCase {
    static let valid = """
    # demo pair, primary side
    [pair]
    name = demo
    host = alpha
    role = primary
    listen = 10.77.0.1:7600
    peer = 10.77.0.2:7600
    key-file = /etc/colo/demo.key
    witness = [fd00::9]:7700

    [guest]
    kernel = /usr/local/share/colo/colo-guest.elf
    command-line = ip=10.0.2.15/24 gw=10.0.2.2
    memory = 128M
    vcpus = 1
    disk = /var/lib/colo/demo/disk.img

    [network]
    tap = colo-demo0
    guest-mac = 52:54:00:12:34:56
    guest-ip = 10.0.2.15

    [checkpoint]
    max-interval = 2s
    compare-timeout = 20ms
    queue-limit = 4096
    ram-channels = 2

    [heartbeat]
    interval = 100ms
    timeout = 500ms
    """

    private func parse(_ text: String) throws(ConfigurationError) -> HostConfiguration {
        try HostConfiguration(file: ConfigurationFile(text: text, path: "demo.conf"))
    }

    func testAValidFileGivesTypedValues() throws {
        let configuration = try parse(Self.valid)
        XCTAssertEqual(configuration.pair.role, .primary)
        XCTAssertEqual(configuration.pair.host, "alpha")
        XCTAssertEqual(configuration.pair.peer.description, "10.77.0.2:7600")
        XCTAssertEqual(configuration.pair.witness?.description, "[fd00::9]:7700")
        XCTAssertEqual(configuration.guest.memoryBytes, 128 << 20)
        XCTAssertNil(configuration.guest.initrd)
        XCTAssertEqual(configuration.guest.commandLine, "ip=10.0.2.15/24 gw=10.0.2.2")
        XCTAssertEqual(configuration.network.guestMAC, [0x52, 0x54, 0, 0x12, 0x34, 0x56])
        XCTAssertEqual(configuration.checkpoint.compareTimeout, .milliseconds(20))
        XCTAssertEqual(configuration.heartbeat.timeout, .milliseconds(500))
    }

    /// Each mistake an operator can make is reported with its line and what
    /// was expected instead.
    func testEveryMistakeIsLocatedAndExplained() {
        let cases: [(String, String, String)] = [
            ("role = primary", "role = leader", "demo.conf:5: [pair] role = leader: expected primary or secondary"),
            ("memory = 128M", "memory = 4M", "demo.conf:14: [guest] memory = 4M: expected a size"),
            ("memory = 128M", "memory = 99999999999999999999G", "expected a size"),
            ("peer = 10.77.0.2:7600", "peer = 10.77.0.300:7600", "demo.conf:7: [pair] peer"),
            ("peer = 10.77.0.2:7600", "peer = 10.77.0.1:7600", "the peer's address is our own"),
            ("listen = 10.77.0.1:7600", "listen = 10.77.0.1:0", "demo.conf:6:"),
            ("guest-mac = 52:54:00:12:34:56", "guest-mac = 01:00:5e:00:00:01", "unicast MAC"),
            ("timeout = 500ms", "timeout = 150ms", "at least 3 heartbeat intervals"),
            ("interval = 100ms", "interval = 100", "expected a duration"),
            ("vcpus = 1", "vcpus = 1\nvcpus = 2", "demo.conf:16: 'vcpus' is already set on line 15"),
            ("ram-channels = 2", "ram-channels = 2\nram-chanels = 4", "unknown key 'ram-chanels' in [checkpoint]"),
            ("[heartbeat]", "[heartbeats]", "unknown section [heartbeats]"),
            ("kernel = /usr/local/share/colo/colo-guest.elf", "kernel = colo-guest.elf", "an absolute path"),
            ("disk = /var/lib/colo/demo/disk.img", "", "[guest] lacks 'disk'"),
            ("[pair]", "[pair", "a section header is written [name]"),
            ("name = demo", "name demo", "demo.conf:3: expected 'key = value'"),
        ]
        for (original, replacement, expected) in cases {
            let text = Self.valid.replacingFirst(original, with: replacement)
            XCTAssertThrowsError(try parse(text), replacement) { error in
                let message = (error as? ConfigurationError)?.description ?? "\(error)"
                XCTAssertTrue(message.contains(expected), "\(replacement): got '\(message)'")
            }
        }
        XCTAssertThrowsError(try parse("name = x")) { error in
            XCTAssertEqual((error as? ConfigurationError)?.description,
                           "demo.conf:1: 'name' comes before any [section]")
        }
        XCTAssertThrowsError(try parse("")) { error in
            XCTAssertEqual((error as? ConfigurationError)?.description, "demo.conf: missing section [pair]")
        }
    }

    /// [metrics] is optional; when present its address is validated like
    /// every other, and a typo is located and explained.
    func testMetricsSectionIsOptionalAndValidated() throws {
        XCTAssertNil(try parse(Self.valid).metrics)
        let withMetrics = try parse(Self.valid + "\n[metrics]\nlisten = 127.0.0.1:9464\n")
        XCTAssertEqual(withMetrics.metrics?.listen.description, "127.0.0.1:9464")
        let cases: [(String, String)] = [
            ("listen = 127.0.0.1", "[metrics] listen = 127.0.0.1: expected address:port of the Prometheus endpoint"),
            ("listen = localhost:9464", "expected address:port"),
            ("", "[metrics] lacks 'listen'"),
            ("listen = 127.0.0.1:9464\nport = 9464", "unknown key 'port' in [metrics]"),
            ("listen = 10.77.0.1:7600", "cannot share [pair] listen's address"),
        ]
        for (body, expected) in cases {
            XCTAssertThrowsError(try parse(Self.valid + "\n[metrics]\n\(body)\n"), body) { error in
                let message = (error as? ConfigurationError)?.description ?? "\(error)"
                XCTAssertTrue(message.contains(expected), "\(body): got '\(message)'")
            }
        }
    }

    func testValueParsers() {
        XCTAssertEqual(ValueParser.duration("1.5s"), .milliseconds(1500))
        XCTAssertEqual(ValueParser.duration("250us"), .microseconds(250))
        XCTAssertNil(ValueParser.duration("-1s"))
        XCTAssertNil(ValueParser.duration("nans"))
        XCTAssertEqual(ValueParser.size("64K"), 65536)
        XCTAssertNil(ValueParser.size("M"))
        XCTAssertNil(IPAddress("01.2.3.4"))
        XCTAssertNotNil(IPAddress("::1"))
        XCTAssertNil(IPAddress("1::2::3"))
        XCTAssertNil(IPAddress("12345::1"))
        XCTAssertNil(ValueParser.socketAddress("[10.0.0.1]:80"))
        XCTAssertNil(ValueParser.socketAddress("::1:80"))
    }

    func testMissingFileIsAClearError() {
        XCTAssertThrowsError(try HostConfiguration(contentsOf: "/nonexistent/demo.conf")) { error in
            XCTAssertEqual((error as? ConfigurationError)?.description, "/nonexistent/demo.conf: No such file or directory")
        }
    }

    /// Random edits of a valid file never crash the parser: every outcome is
    /// a configuration or a located error.
    func testRandomMutationsNeverCrash() {
        var generator = SplitMix(seed: 42)
        let bytes = Array(Self.valid.utf8)
        for _ in 0..<500 {
            var mutated = bytes
            for _ in 0..<Int.random(in: 1...8, using: &generator) {
                let index = Int.random(in: 0..<mutated.count, using: &generator)
                switch Int.random(in: 0..<3, using: &generator) {
                case 0: mutated[index] = UInt8.random(in: 0...255, using: &generator)
                case 1: mutated.remove(at: index)
                default: mutated.insert(UInt8.random(in: 32...126, using: &generator), at: index)
                }
            }
            let text = String(decoding: mutated, as: UTF8.self)
            do {
                _ = try parse(text)
            } catch {
                XCTAssertFalse(error.message.isEmpty)
            }
        }
    }
}

struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension String {
    func replacingFirst(_ target: String, with replacement: String) -> String {
        guard let range = Substring(self).range(of: target) else { return self }
        return String(self[..<range.lowerBound]) + replacement + String(self[range.upperBound...])
    }
}
