<?php

// examples/php/src/SessionCheck.php: the answer to "is a login session that
// started at time T still good?", from what lhdiscord writes back to
// lhdiscord.users: status (reconcile suspends, restore_user re-activates)
// and session_revoked_at (reconcile revokes the sessions of a user it
// suspends while in scope or entitled). Client::checkSession builds it.

declare(strict_types=1);

namespace Lhdiscord;

final class SessionCheck
{
    /** The session may go on. */
    public const OK = 'ok';
    /** lhdiscord has no such user (deleted, or never synced). */
    public const UNKNOWN_USER = 'unknown_user';
    /** The identity is suspended or disabled: log out, show why. */
    public const NOT_ACTIVE = 'not_active';
    /** Sessions were revoked at or after the session started: log in again. */
    public const REVOKED = 'sessions_revoked';

    public function __construct(
        public readonly bool $valid,
        public readonly string $reason,
        public readonly ?string $status,
        public readonly ?string $sessionRevokedAt,
    ) {
    }

    /** @return array{valid: bool, reason: string, status: ?string, session_revoked_at: ?string} */
    public function toArray(): array
    {
        return [
            'valid' => $this->valid,
            'reason' => $this->reason,
            'status' => $this->status,
            'session_revoked_at' => $this->sessionRevokedAt,
        ];
    }
}
