<?php

// examples/php/src/Client.php: the lhdiscord functions a portal calls, as
// lhdiscord_app may call them (README "Connecting the application"):
// linking (OAuth2 or an import), unlinking, notifications, on-demand sync,
// and reading back what lhdiscord decided (status, session_revoked_at,
// has_access, status_map, the admin overview). Writes to the portal's own
// users table are PortalUsers' job; the sync trigger carries them over.
// Account rows never carry token columns: the SQL names its columns.

declare(strict_types=1);

namespace Lhdiscord;

final class Client
{
    /** The columns of an account row the portal may show; no tokens. */
    private const ACCOUNT_COLUMNS = 'a.id, a.user_id, a.discord_user_id, a.username, a.global_name,'
        . ' a.avatar_hash, a.status::text AS status, a.verified_at,'
        . ' lhdiscord.display_name(a) AS display_name, lhdiscord.avatar_url(a) AS avatar_url';

    public function __construct(private readonly Db $db)
    {
    }

    public function db(): Db
    {
        return $this->db;
    }

    // ---- linking -----------------------------------------------------------

    /** Level traveler or above, not in the brig, below the account limit. */
    public function canLink(int $userId): bool
    {
        return (bool) $this->db->value('SELECT lhdiscord.can_link(?)', [$userId]);
    }

    /**
     * The Discord authorization URL to redirect the user's browser to. It
     * carries a single-use state bound to this user; lhdiscord keeps only its
     * hash. Raises the link gate's errors (NotEligible, AccountLimitReached,
     * UserNotFound) before anything is stored.
     */
    public function beginOAuth(int $userId): string
    {
        return (string) $this->db->value('SELECT lhdiscord.begin_oauth(?)', [$userId]);
    }

    /**
     * The callback: exchange the code, read the Discord user, link. Any OAuth
     * failure is AuthorizationFailed and writes nothing; a Discord account
     * linked to someone else is AlreadyLinked.
     *
     * @return array<string, mixed> the linked account
     */
    public function completeOAuth(int $userId, ?string $code, ?string $state): array
    {
        $row = $this->db->one(
            'SELECT ' . self::ACCOUNT_COLUMNS . ' FROM lhdiscord.complete_oauth(?, ?, ?) a',
            [$userId, $code, $state],
        );
        return $row ?? throw new DatabaseError('complete_oauth returned no row', 'XX000');
    }

    /**
     * The callback, given the URL (or just the query string) Discord sent the
     * browser back with. A callback without a code (the user pressed
     * Cancel: ?error=access_denied) is passed on as it is, so lhdiscord
     * answers with the same AuthorizationFailed as for any other failure.
     *
     * @return array<string, mixed> the linked account
     */
    public function completeOAuthCallback(int $userId, string $callback): array
    {
        $query = str_contains($callback, '?') ? (string) parse_url($callback, PHP_URL_QUERY) : ltrim($callback, '?');
        parse_str($query, $q);
        $code = isset($q['code']) && is_string($q['code']) ? $q['code'] : null;
        $state = isset($q['state']) && is_string($q['state']) ? $q['state'] : null;
        return $this->completeOAuth($userId, $code, $state);
    }

    /**
     * Link an account known by other means (an import from an old portal):
     * the same gate, limit and duplicate checks as OAuth. Tokens are stored
     * encrypted (EncryptionKeyMissing without lhdiscord.encryption_key).
     * $lane: null (interactive) or 'bulk' for a mass import.
     *
     * @return array<string, mixed> the linked account
     */
    public function linkAccount(
        int $userId,
        string $discordUserId,
        string $username,
        ?string $globalName = null,
        ?string $avatarHash = null,
        ?string $accessToken = null,
        ?string $refreshToken = null,
        ?\DateTimeInterface $tokenExpiresAt = null,
        ?string $lane = null,
    ): array {
        $row = $this->db->one(
            'SELECT ' . self::ACCOUNT_COLUMNS
                . ' FROM lhdiscord.link_account(?, ?, ?, ?, ?, ?, ?, CAST(? AS timestamptz),'
                . ' CAST(? AS lhdiscord.outbox_lane)) a',
            [
                $userId, $discordUserId, $username, $globalName, $avatarHash, $accessToken, $refreshToken,
                $tokenExpiresAt?->format('Y-m-d\TH:i:s.uP'), $lane,
            ],
        );
        return $row ?? throw new DatabaseError('link_account returned no row', 'XX000');
    }

    /**
     * The owner unlinks their account: every managed role is stripped
     * (urgent lane). $actorId is the logged-in user (null for a guest:
     * MissingArgument); anyone but the owner gets Unauthorized.
     */
    public function unlinkAccount(?int $actorId, int $accountId): void
    {
        $this->db->value('SELECT lhdiscord.unlink_account(?, ?)', [$actorId, $accountId]);
    }

    /** A portal admin revokes someone's account (Unauthorized otherwise). */
    public function revokeAccount(?int $adminId, int $accountId): void
    {
        $this->db->value('SELECT lhdiscord.revoke_account(?, ?)', [$adminId, $accountId]);
    }

    /**
     * The accounts of $userId, as $actorId may see them: their own, or
     * anyone's for a portal admin (Unauthorized otherwise).
     *
     * @return list<array<string, mixed>>
     */
    public function accountsOf(?int $actorId, int $userId): array
    {
        return $this->db->all(
            'SELECT ' . self::ACCOUNT_COLUMNS . ' FROM lhdiscord.accounts_of(?, ?) a ORDER BY a.id',
            [$actorId, $userId],
        );
    }

    public function hasDiscordLinked(int $userId): bool
    {
        return (bool) $this->db->value('SELECT lhdiscord.has_discord_linked(?)', [$userId]);
    }

    // ---- notifications -----------------------------------------------------

    /**
     * Queue a DM to each active account of the user (when they opted in with
     * notify_discord). Returns how many were queued: 0 is not an error (no
     * account, opted out, brigged, null content, or a name that sends no DM).
     * $lane: null (interactive) or 'bulk' for an announcement to many.
     */
    public function notify(int $userId, string $notification, ?string $content, ?string $lane = null): int
    {
        return (int) $this->db->value(
            'SELECT lhdiscord.notify(?, ?, ?, CAST(? AS lhdiscord.outbox_lane))',
            [$userId, $notification, $content, $lane],
        );
    }

    // ---- sync on demand ----------------------------------------------------

    /** Re-queue the user's role convergence; the number of accounts queued. */
    public function syncPermissions(int $userId): int
    {
        return (int) $this->db->value('SELECT lhdiscord.sync_permissions(?)', [$userId]);
    }

    // ---- what lhdiscord decided --------------------------------------------

    /** Effective access right now: active, and entitled in scope or privileged. */
    public function hasAccess(int $userId): bool
    {
        return (bool) $this->db->value('SELECT lhdiscord.has_access(?)', [$userId]);
    }

    /**
     * lhdiscord's row for the user: what the sync trigger wrote, and what
     * lhdiscord writes back (status, session_revoked_at).
     *
     * @return array<string, mixed>|null
     */
    public function identity(int $userId): ?array
    {
        return $this->db->one(
            'SELECT user_id, username, status::text AS status, in_scope, membership_level::text AS membership_level,'
                . ' staff_department::text AS staff_department, staff_rank::text AS staff_rank, in_brig,'
                . ' notify_discord, session_revoked_at FROM lhdiscord.users WHERE user_id = ?',
            [$userId],
        );
    }

    /**
     * For the auth middleware: may a session of $userId that started at
     * $startedAt go on? Not when the identity is no longer active, nor when
     * lhdiscord revoked the user's sessions at or after that moment. The
     * comparison runs in the database, on its clock and its timestamps.
     */
    public function checkSession(int $userId, \DateTimeInterface $startedAt): SessionCheck
    {
        $row = $this->db->one(
            'SELECT status::text AS status, session_revoked_at,'
                . ' coalesce(session_revoked_at >= CAST(? AS timestamptz), false) AS revoked'
                . ' FROM lhdiscord.users WHERE user_id = ?',
            [$startedAt->format('Y-m-d\TH:i:s.uP'), $userId],
        );
        if ($row === null) {
            return new SessionCheck(false, SessionCheck::UNKNOWN_USER, null, null);
        }
        $revokedAt = $row['session_revoked_at'] === null ? null : (string) $row['session_revoked_at'];
        if ($row['status'] !== 'active') {
            return new SessionCheck(false, SessionCheck::NOT_ACTIVE, $row['status'], $revokedAt);
        }
        if ($row['revoked'] === true) {
            return new SessionCheck(false, SessionCheck::REVOKED, $row['status'], $revokedAt);
        }
        return new SessionCheck(true, SessionCheck::OK, $row['status'], $revokedAt);
    }

    /**
     * The governance view, one row per user (or one user): eligible,
     * entitled, privileged, effective_access, policy_outcome, drift,
     * snapshot_age.
     *
     * @return list<array<string, mixed>>
     */
    public function statusMap(?int $userId = null): array
    {
        $sql = 'SELECT user_id, username, identity_status::text AS identity_status, eligible, entitled,'
            . ' privileged, effective_access, policy_outcome, drift, snapshot_age'
            . ' FROM lhdiscord.status_map';
        if ($userId === null) {
            return $this->db->all($sql . ' ORDER BY user_id');
        }
        return $this->db->all($sql . ' WHERE user_id = ?', [$userId]);
    }

    /**
     * The admin page: every account with its owner and queue state.
     *
     * @return list<array<string, mixed>>
     */
    public function accountOverview(): array
    {
        return $this->db->all(
            'SELECT id, user_id, portal_username, membership_level::text AS membership_level, in_brig,'
                . ' discord_user_id, display_name, avatar_url, status::text AS status, has_access_token,'
                . ' tokens_stale, pending_jobs FROM lhdiscord.account_overview ORDER BY id',
        );
    }
}
