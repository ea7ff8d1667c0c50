import Durations
import XCTest

final class DurationUnitsTests: XCTestCase {
    func testWholeUnitsTruncate() {
        let duration = Duration.seconds(2) + .nanoseconds(1_999_999)
        XCTAssertEqual(duration.nanoseconds, 2_001_999_999)
        XCTAssertEqual(duration.microseconds, 2_001_999)
        XCTAssertEqual(duration.milliseconds, 2001)
        XCTAssertEqual(Duration.nanoseconds(-1500).microseconds, -1)
        XCTAssertEqual(Duration.milliseconds(250).seconds, 0.25, accuracy: 1e-12)
    }

    /// A timeout shorter than a millisecond must not become a zero (busy) poll.
    func testRoundedUpMillisecondsNeverTurnAShortTimeoutIntoZero() {
        XCTAssertEqual(Duration.microseconds(200).millisecondsRoundedUp, 1)
        XCTAssertEqual(Duration.milliseconds(3).millisecondsRoundedUp, 3)
        XCTAssertEqual(Duration.zero.millisecondsRoundedUp, 0)
        XCTAssertEqual((Duration.seconds(1) + .nanoseconds(1)).millisecondsRoundedUp, 1001)
    }

    func testHugeDurationsSaturate() {
        let huge = Duration.seconds(Int64.max / 10)
        XCTAssertEqual(huge.nanoseconds, .max)
        XCTAssertEqual(huge.microseconds, .max)
        XCTAssertEqual(huge.millisecondsRoundedUp, .max)
        XCTAssertEqual((Duration.zero - huge).nanoseconds, .min)
    }
}
