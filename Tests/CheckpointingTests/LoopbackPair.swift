import Checkpointing
import Glibc
import PeerAuthentication
import RAMStream
import SharedMemory
import XCTest

/// Connected TCP socket pairs on 127.0.0.1, as supervisord would hand them
/// to the two checkpointds.
func tcpPairs(_ count: Int) throws -> [(Int32, Int32)] {
    let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    defer { close(listener) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    try withUnsafeMutablePointer(to: &address) { pointer in
        try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
            guard bind(listener, raw, length) == 0, listen(listener, 16) == 0,
                  getsockname(listener, raw, &length) == 0 else { throw POSIXError(.EADDRINUSE) }
        }
    }
    var pairs: [(Int32, Int32)] = []
    for _ in 0..<count {
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, length) }
        }
        guard connected == 0 else { throw POSIXError(.ECONNREFUSED) }
        let server = accept(listener, nil, nil)
        pairs.append((client, server))
    }
    return pairs
}

/// A sealed memfd of `pages` pages, mapped.
func guestMemory(pages: Int, writable: Bool = true) throws -> (Memfd, MemoryMapping) {
    let memfd = try Memfd.create(name: "test-ram", size: pages * 4096, sealedSize: true)
    return (memfd, try MemoryMapping(memfd: memfd, writable: writable))
}

let testKey = try! PeerKey(bytes: Array("0123456789abcdef0123456789abcdef".utf8))

/// A primary and a secondary paired in this process over loopback TCP.
final class ReplicatedPair {
    let primaryRAM: MemoryMapping
    let secondaryRAM: MemoryMapping
    let primary: PrimaryReplicator
    let secondary: SecondaryReplica
    let pageCount: Int

    init(pages: Int, channels: Int, verify: Bool = false, timeout: Duration = .seconds(3), incoming: Bool = false) throws {
        pageCount = pages
        primaryRAM = try guestMemory(pages: pages).1
        secondaryRAM = try guestMemory(pages: pages).1
        let cache = try guestMemory(pages: pages).1
        let pairs = try tcpPairs(channels + 1)
        let options = ReplicationOptions(verify: verify, peerTimeout: timeout, threads: 2, incoming: incoming)
        nonisolated(unsafe) var secondaryLink: Result<CheckpointLink, CheckpointError>?
        let done = DispatchSemaphoreLite()
        let size = pages * 4096
        Thread.detachNewThread {
            do {
                secondaryLink = .success(try CheckpointLink.establish(
                    controlFD: pairs[0].1, pageFDs: pairs.dropFirst().map(\.1), primary: false, key: testKey,
                    memoryBytes: size, timeout: timeout))
            } catch let error as CheckpointError {
                secondaryLink = .failure(error)
            } catch {}
            done.signal()
        }
        let primaryLink = try CheckpointLink.establish(controlFD: pairs[0].0, pageFDs: pairs.dropFirst().map(\.0),
                                                 primary: true, key: testKey, memoryBytes: size, timeout: timeout)
        done.wait()
        primary = PrimaryReplicator(memory: primaryRAM, link: primaryLink, options: options)
        secondary = SecondaryReplica(memory: secondaryRAM, cache: cache, link: try secondaryLink!.get(), options: options)
    }

    deinit {
        primary.close()
        secondary.close()
    }

    /// Writes `byte` over page `page` of the primary's RAM.
    func write(page: Int, byte: UInt8) {
        (primaryRAM.base + page * 4096).initializeMemory(as: UInt8.self, repeating: byte, count: 4096)
    }

    /// Runs a checkpoint on both sides at once, as the two supervisords would.
    func checkpoint(_ dirty: PageBitmap, secondaryDirty: PageBitmap? = nil, deviceState: [UInt8] = [1, 2, 3])
        throws -> (PrimaryReplicator.CheckpointReport, SecondaryReplica.CommitReport) {
        nonisolated(unsafe) var committed: Result<SecondaryReplica.CommitReport, CheckpointError>?
        let done = DispatchSemaphoreLite()
        let secondary = self.secondary
        let guestDirty = secondaryDirty ?? PageBitmap(pageCount: pageCount)
        Thread.detachNewThread {
            do {
                committed = .success(try secondary.commit(guestDirty: guestDirty))
            } catch let error as CheckpointError {
                committed = .failure(error)
            } catch {}
            done.signal()
        }
        let taken = try primary.takeCheckpoint(dirty, deviceState: deviceState)
        done.wait()
        return (taken, try committed!.get())
    }

    var ramIdentical: Bool {
        memcmp(primaryRAM.base, secondaryRAM.base, pageCount * 4096) == 0
    }
}

/// A semaphore without Dispatch.
final class DispatchSemaphoreLite: @unchecked Sendable {
    private var semaphore = sem_t()
    init() { sem_init(&semaphore, 0, 0) }
    deinit { sem_destroy(&semaphore) }
    func signal() { sem_post(&semaphore) }
    func wait() { while sem_wait(&semaphore) != 0 {} }
}
