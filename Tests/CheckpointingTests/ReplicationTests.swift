import Checkpointing
import Glibc
import PeerAuthentication
import RAMStream
import SharedMemory
import XCTest

final class ReplicationTests: XCTestCase {
    func testCheckpointsMirrorRAMIncludingZeroPagesAndSecondaryWrites() throws {
        let pair = try ReplicatedPair(pages: 1024, channels: 3, verify: true)
        // Initial sync: every page, as a live migration's first round.
        for page in stride(from: 0, to: 1024, by: 3) { pair.write(page: page, byte: UInt8(page & 0xff) | 1) }
        _ = try pair.primary.queueRound(nil)
        let (first, firstCommit) = try pair.checkpoint(PageBitmap(pageCount: 1024))
        XCTAssertEqual(first.sequence, 1)
        XCTAssertEqual(firstCommit.pagesCopied, 1024)
        XCTAssertEqual(firstCommit.deviceState, [1, 2, 3])
        XCTAssertTrue(firstCommit.verification.identical)
        XCTAssertTrue(pair.ramIdentical)

        for round in 0..<20 {
            var dirty = PageBitmap(pageCount: 1024)
            for index in 0..<37 {
                let page = (round * 131 + index * 29) % 1024
                // Every fifth dirtied page becomes a zero page: it must reach
                // the SVM as zeros, not be skipped.
                pair.write(page: page, byte: index % 5 == 0 ? 0 : UInt8(round + 1))
                dirty.insert(page)
            }
            // The SVM scribbles over pages of its own; the commit must undo that.
            var secondaryDirty = PageBitmap(pageCount: 1024)
            let scribbled = (round * 7 + 500) % 1024
            (pair.secondaryRAM.base + scribbled * 4096).storeBytes(of: 0xEE, as: UInt8.self)
            secondaryDirty.insert(scribbled)
            let (taken, committed) = try pair.checkpoint(dirty, secondaryDirty: secondaryDirty)
            XCTAssertEqual(taken.sequence, UInt64(round + 2))
            XCTAssertTrue(committed.verification.identical, "checkpoint \(taken.sequence)")
            XCTAssertTrue(pair.ramIdentical, "checkpoint \(taken.sequence)")
        }
    }

    /// A migration target (incoming) has each page in its RAM as soon as it
    /// arrives, zero pages over earlier data included, so the stop-and-copy
    /// commit copies nothing and ignores the target's dirty bitmap; after
    /// that first commit the target's RAM is only written at commits.
    func testIncomingTargetGetsPagesAsTheyArrive() throws {
        let pair = try ReplicatedPair(pages: 512, channels: 2, incoming: true)
        for page in 0..<512 where page % 4 != 0 { pair.write(page: page, byte: UInt8(page % 251) + 1) }
        _ = try pair.primary.queueRound(nil)
        func waitReceived(_ pages: UInt64) {
            while pair.secondary.progress.pagesReceived < pages { usleep(1000) }
        }
        waitReceived(512)
        XCTAssertTrue(pair.ramIdentical, "pages reach the target's RAM before any commit")
        var dirty = PageBitmap(pageCount: 512)
        pair.write(page: 5, byte: 0)  // data, then a zero page
        dirty.insert(5)
        _ = try pair.primary.queueRound(dirty)
        waitReceived(513)
        XCTAssertTrue(pair.ramIdentical)
        var last = PageBitmap(pageCount: 512)
        pair.write(page: 9, byte: 0xAB)
        last.insert(9)
        let (_, first) = try pair.checkpoint(last, secondaryDirty: PageBitmap.full(pageCount: 512))
        XCTAssertEqual(first.pagesCopied, 0)
        XCTAssertTrue(pair.ramIdentical)

        // From now on a running secondary: pages wait in the cache for the commit.
        var next = PageBitmap(pageCount: 512)
        pair.write(page: 20, byte: 0x55)
        next.insert(20)
        _ = try pair.primary.queueRound(next)
        waitReceived(515)
        XCTAssertFalse(pair.ramIdentical, "a page sent after the first commit waits for the next")
        var secondaryDirty = PageBitmap(pageCount: 512)
        (pair.secondaryRAM.base + 100 * 4096).storeBytes(of: 0xEE, as: UInt8.self)
        secondaryDirty.insert(100)
        let (_, second) = try pair.checkpoint(PageBitmap(pageCount: 512), secondaryDirty: secondaryDirty)
        XCTAssertEqual(second.pagesCopied, 2)
        XCTAssertTrue(pair.ramIdentical)
    }

    func testRoundsBetweenCheckpointsShrinkTheCheckpoint() throws {
        let pair = try ReplicatedPair(pages: 512, channels: 2)
        _ = try pair.primary.queueRound(nil)
        _ = try pair.checkpoint(PageBitmap(pageCount: 512))
        var dirty = PageBitmap(pageCount: 512)
        for page in 0..<200 {
            pair.write(page: page, byte: 7)
            dirty.insert(page)
        }
        _ = try pair.primary.queueRound(dirty)
        // Wait until the round is on the wire.
        while pair.primary.progress.dirtyPagesLeft > 0 { usleep(1000) }
        var last = PageBitmap(pageCount: 512)
        pair.write(page: 300, byte: 9)
        last.insert(300)
        let (taken, committed) = try pair.checkpoint(last)
        XCTAssertEqual(taken.pagesSent, 1)
        XCTAssertEqual(committed.pagesCopied, 201)
        XCTAssertTrue(pair.ramIdentical)
    }

    /// A page sent again while its older copy is still in flight must not be
    /// overtaken by it: each page keeps to one channel.
    func testPagesResentInQuickSuccessionArriveInOrder() throws {
        let pair = try ReplicatedPair(pages: 2048, channels: 4)
        _ = try pair.primary.queueRound(nil)
        _ = try pair.checkpoint(PageBitmap(pageCount: 2048))
        for round in 1...40 {
            var dirty = PageBitmap(pageCount: 2048)
            for page in stride(from: round % 3, to: 2048, by: 3) {
                pair.write(page: page, byte: UInt8(round))
                dirty.insert(page)
            }
            _ = try pair.primary.queueRound(dirty)
        }
        _ = try pair.checkpoint(PageBitmap(pageCount: 2048))
        XCTAssertTrue(pair.ramIdentical)
    }

    func testWrongKeyIsRefusedBeforeAnyPage() throws {
        let pairs = try tcpPairs(2)
        let otherKey = try PeerKey(bytes: Array("another key entirely, 32 bytes!!".utf8))
        nonisolated(unsafe) var secondaryError: CheckpointError?
        let done = DispatchSemaphoreLite()
        Thread.detachNewThread {
            do {
                _ = try CheckpointLink.establish(controlFD: pairs[0].1, pageFDs: [pairs[1].1], primary: false, key: otherKey,
                                           memoryBytes: 4096, timeout: .seconds(2))
            } catch let error as CheckpointError {
                secondaryError = error
            } catch {}
            done.signal()
        }
        XCTAssertThrowsError(try CheckpointLink.establish(controlFD: pairs[0].0, pageFDs: [pairs[1].0], primary: true,
                                                    key: testKey, memoryBytes: 4096, timeout: .seconds(2)))
        done.wait()
        guard case .authentication(channel: "checkpoint-control", .proofMismatch)? = secondaryError else {
            return XCTFail("expected a proof mismatch, got \(String(describing: secondaryError))")
        }
    }

    func testRAMSizeMismatchIsRefused() throws {
        let pairs = try tcpPairs(2)
        nonisolated(unsafe) var secondaryError: CheckpointError?
        let done = DispatchSemaphoreLite()
        Thread.detachNewThread {
            do {
                _ = try CheckpointLink.establish(controlFD: pairs[0].1, pageFDs: [pairs[1].1], primary: false, key: testKey,
                                           memoryBytes: 8192, timeout: .seconds(2))
            } catch let error as CheckpointError {
                secondaryError = error
            } catch {}
            done.signal()
        }
        XCTAssertThrowsError(try CheckpointLink.establish(controlFD: pairs[0].0, pageFDs: [pairs[1].0], primary: true,
                                                    key: testKey, memoryBytes: 4096, timeout: .seconds(2)))
        done.wait()
        XCTAssertTrue("\(String(describing: secondaryError))".contains("4096"), "\(String(describing: secondaryError))")
    }

    func testIncompleteCheckpointLeavesSecondaryRAMUntouched() throws {
        let pair = try ReplicatedPair(pages: 256, channels: 2, timeout: .milliseconds(500))
        _ = try pair.primary.queueRound(nil)
        _ = try pair.checkpoint(PageBitmap(pageCount: 256))
        let before = Array(UnsafeRawBufferPointer(start: pair.secondaryRAM.base, count: 256 * 4096))
        for page in 0..<256 { pair.write(page: page, byte: 0x5A) }
        // Pages arrive, but no checkpoint follows: the commit times out.
        _ = try pair.primary.queueRound(PageBitmap.full(pageCount: 256))
        while pair.primary.progress.dirtyPagesLeft > 0 { usleep(1000) }
        XCTAssertThrowsError(try pair.secondary.commit(guestDirty: PageBitmap(pageCount: 256))) { error in
            XCTAssertTrue("\(error)".contains("did not arrive whole"), "\(error)")
        }
        XCTAssertEqual(Array(UnsafeRawBufferPointer(start: pair.secondaryRAM.base, count: 256 * 4096)), before)
        XCTAssertNotNil(pair.secondary.failure)
        // The primary learns it from the secondary's error frame.
        XCTAssertThrowsError(try pair.primary.takeCheckpoint(PageBitmap(pageCount: 256), deviceState: []))
    }
}
