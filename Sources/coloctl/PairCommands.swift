import ArgumentParser
import ColoProtocol
import PairConfiguration
import SwiftProtobuf

/// `coloctl checkpoint`: a checkpoint now.
struct Checkpoint: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Take a checkpoint now and show its pause.",
        discussion: "Exits 0 once the checkpoint completed, 4 when the pair is not in lock-step.")

    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runReporting(json: connection.json) { () throws(CommandFailure) in
            guard case .pairCheckpoint(let reply) = try callSupervisor(.pairCheckpoint(ColoPairCheckpointRequest()),
                                                                        connection) else {
                throw unexpectedAnswer("checkpoint")
            }
            if connection.json {
                try printReply(reply)
            } else {
                print("checkpoint #\(reply.checkpoint.id) done, paused \(PairText.microseconds(reply.checkpoint.pauseUs))")
            }
        }
    }
}

/// `coloctl failover`: this host takes the pair and runs alone.
struct Failover: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make this host claim the pair and run alone (the peer is dropped).",
        discussion: "Exits 0 when supervisord accepted the failover, 4 when the pair's state does not allow it.")

    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runReporting(json: connection.json) { () throws(CommandFailure) in
            let pair = try command(.pairFailover(ColoPairFailoverRequest()), "failover", connection)
            if connection.json { try printReply(pair) } else { print("failover accepted: now \(pair.state)") }
        }
    }
}

/// `coloctl resync`: bring a new partner up to date, drawing progress.
struct Resync: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bring a new partner up to date while running alone; waits for lock-step, drawing progress.",
        discussion: """
        Exits 0 once the pair is in lock-step (or, with --no-wait, once the resync started), \
        1 when the resync failed, 4 when this host is not running alone, 5 after --wait-timeout.
        """)

    @OptionGroup var connection: ConnectionOptions

    @Option(name: .long, help: ArgumentHelp("The new partner's address (default: the configured peer).",
                                            valueName: "address:port"))
    var peer: String?

    @Flag(name: .long, help: "Return once the resync started instead of waiting for lock-step.")
    var noWait = false

    @OptionGroup var wait: WaitOptions

    func validate() throws {
        if let peer, ValueParser.socketAddress(peer) == nil {
            throw ValidationError("--peer '\(peer)' is not address:port (e.g. 10.77.0.3:7600 or [fd00::3]:7600)")
        }
    }

    func run() throws {
        try runReporting(json: connection.json) { () throws(CommandFailure) in
            var request = ColoPairResyncRequest()
            request.peer = peer ?? ""
            var pair = try command(.pairResync(request), "resync", connection)
            if !noWait {
                pair = try ProgressWatcher(connection: connection, goal: .resync, limit: wait.limit,
                                           quiet: connection.json).run()
            }
            if connection.json { try printReply(pair) } else { print("resync \(noWait ? "started" : "done"): \(pair.state)") }
        }
    }
}

/// `coloctl failback`: swap the roles of a pair in lock-step.
struct Failback: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Swap the roles of the pair, on its primary; waits until the pair is in lock-step again.",
        discussion: """
        The primary takes a last checkpoint and pauses; the secondary takes the pair over (the witness \
        grants it the next epoch) with the clients' connections, and resyncs the old primary as its \
        secondary. Exits 0 once the pair is in lock-step with the roles swapped (or, with --no-wait, once \
        the handover started), 1 when it was declined (the pair goes on as it was), 4 when this host is \
        not the primary of a pair in lock-step, 5 after --wait-timeout.
        """)

    @OptionGroup var connection: ConnectionOptions

    @Flag(name: .long, help: "Return once the handover started instead of waiting for lock-step.")
    var noWait = false

    @OptionGroup var wait: WaitOptions

    func run() throws {
        try runReporting(json: connection.json) { () throws(CommandFailure) in
            var pair = try command(.pairFailback(ColoPairFailbackRequest()), "failback", connection)
            if !noWait {
                pair = try ProgressWatcher(connection: connection, goal: .failback, limit: wait.limit,
                                           quiet: connection.json).run()
            }
            if connection.json {
                try printReply(pair)
            } else {
                print(noWait ? "failback started: \(pair.state)" : "failback done: this host is the \(pair.hostRole) (epoch \(pair.epoch))")
            }
        }
    }
}

/// `coloctl wait`: follow the initial migration (or a resync) to lock-step.
struct Wait: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Wait until the pair is in lock-step, drawing the migration's or resync's progress.",
        discussion: "Exits 0 in lock-step, 1 when this host is fenced, 5 after --wait-timeout.")

    @OptionGroup var connection: ConnectionOptions

    @OptionGroup var wait: WaitOptions

    func run() throws {
        try runReporting(json: connection.json) { () throws(CommandFailure) in
            let pair = try ProgressWatcher(connection: connection, goal: .lockstep, limit: wait.limit,
                                           quiet: connection.json).run()
            if connection.json { try printReply(pair) } else { print("lock-step (epoch \(pair.epoch))") }
        }
    }
}

/// Sends a failover, resync or failback and returns the pair as accepted.
private func command(_ body: ColoRequest.OneOf_Body, _ name: String,
                     _ connection: ConnectionOptions) throws(CommandFailure) -> ColoPairReport {
    guard case .pairCommand(let accepted) = try callSupervisor(body, connection) else {
        throw unexpectedAnswer(name)
    }
    return accepted.pair
}

private func unexpectedAnswer(_ request: String) -> CommandFailure {
    CommandFailure(status: ColoctlExit.failed, code: "failed",
                   message: "supervisord answered a \(request) request with another message")
}

private func printReply(_ message: some SwiftProtobuf.Message) throws(CommandFailure) {
    do { try printJSON(message) } catch {
        throw CommandFailure(status: ColoctlExit.failed, code: "failed", message: "cannot encode JSON: \(error)")
    }
}

/// How long a command that ends in lock-step (wait, resync, failback)
/// waits for it.
struct WaitOptions: ParsableArguments {
    @Option(name: .long, help: "Seconds to wait for lock-step.")
    var waitTimeout: Double = 1800

    func validate() throws {
        guard waitTimeout > 0, waitTimeout <= 86_400 else {
            throw ValidationError("--wait-timeout must be between 0 and 86400 seconds")
        }
    }

    var limit: Duration { .seconds(waitTimeout) }
}
