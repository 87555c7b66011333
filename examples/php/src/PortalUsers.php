<?php

// examples/php/src/PortalUsers.php: the portal's own users table
// (public.users, owned by the application's role), written as the
// application's models would write it. The application never writes
// lhdiscord.users itself: the SECURITY INVOKER trigger of
// sql/portal_sync.sql carries each insert, update and delete over in the
// same statement, so lhdiscord's checks (an unknown level is 22P02) refuse
// the application's write too and the two tables never disagree.
// Portal roles (admin, hauling.member, ...) live in lhdiscord.user_roles.

declare(strict_types=1);

namespace Lhdiscord;

final class PortalUsers
{
    private const COLUMNS = 'id, name, email, membership_level, staff_department, staff_rank,'
        . ' in_brig, notify_discord, in_scope';

    public function __construct(private readonly Db $db)
    {
    }

    /** A new portal user (Laravel's registration); returns the new id. */
    public function register(
        string $name,
        string $email,
        string $password,
        string $level = 'drifter',
        bool $notifyDiscord = false,
    ): int {
        return (int) $this->db->value(
            'INSERT INTO public.users (name, email, password, membership_level, notify_discord, created_at, updated_at)'
                . ' VALUES (?, ?, ?, ?, ?, now(), now()) RETURNING id',
            [$name, $email, password_hash($password, PASSWORD_DEFAULT), $level, $notifyDiscord],
        );
    }

    /** @return array<string, mixed>|null */
    public function find(int $id): ?array
    {
        return $this->db->one('SELECT ' . self::COLUMNS . ' FROM public.users WHERE id = ?', [$id]);
    }

    /** Change the membership level; lhdiscord converges the level role. */
    public function promote(int $id, string $level): bool
    {
        return $this->update($id, 'UPDATE public.users SET membership_level = ?, updated_at = now() WHERE id = ?', [
            $level,
        ]);
    }

    /** Department (null for none) and rank; converged together. */
    public function setStaff(int $id, ?string $department, string $rank): bool
    {
        return $this->update(
            $id,
            'UPDATE public.users SET staff_department = ?, staff_rank = ?, updated_at = now() WHERE id = ?',
            [$department, $rank],
        );
    }

    /** Into the brig: accounts brigged at once, every managed role stripped. */
    public function brig(int $id): bool
    {
        return $this->update($id, 'UPDATE public.users SET in_brig = ?, updated_at = now() WHERE id = ?', [true]);
    }

    /** Out of the brig: accounts active again, roles re-applied. */
    public function release(int $id): bool
    {
        return $this->update($id, 'UPDATE public.users SET in_brig = ?, updated_at = now() WHERE id = ?', [false]);
    }

    /**
     * The portal's access-policy outcome (access.login). lhdiscord
     * reconciles the user on every change: out of scope means suspended.
     */
    public function setInScope(int $id, bool $inScope): bool
    {
        return $this->update($id, 'UPDATE public.users SET in_scope = ?, updated_at = now() WHERE id = ?', [$inScope]);
    }

    /** The DM preference. */
    public function setNotifyDiscord(int $id, bool $on): bool
    {
        return $this->update($id, 'UPDATE public.users SET notify_discord = ?, updated_at = now() WHERE id = ?', [$on]);
    }

    /** Laravel's "last seen" kind of write: not synced, queues nothing. */
    public function touch(int $id): bool
    {
        return $this->update($id, 'UPDATE public.users SET updated_at = now() WHERE id = ?', []);
    }

    /** Delete the user; lhdiscord strips the roles of their accounts. */
    public function delete(int $id): bool
    {
        return $this->db->execute('DELETE FROM public.users WHERE id = ?', [$id]) === 1;
    }

    /** Give a portal role (e.g. admin); in portal-leading mode it is synced. */
    public function grantRole(int $id, string $role): void
    {
        $this->db->execute(
            'INSERT INTO lhdiscord.user_roles (user_id, role) VALUES (?, ?) ON CONFLICT DO NOTHING',
            [$id, $role],
        );
    }

    public function revokeRole(int $id, string $role): bool
    {
        $sql = 'DELETE FROM lhdiscord.user_roles WHERE user_id = ? AND role = ?';
        return $this->db->execute($sql, [$id, $role]) === 1;
    }

    /** @return list<string> */
    public function roles(int $id): array
    {
        $sql = 'SELECT role FROM lhdiscord.user_roles WHERE user_id = ? ORDER BY role';
        return array_column($this->db->all($sql, [$id]), 'role');
    }

    /**
     * One UPDATE of one user by id; true when the user exists.
     *
     * @param list<int|string|bool|float|null> $params the values before the id
     */
    private function update(int $id, string $sql, array $params): bool
    {
        $params[] = $id;
        return $this->db->execute($sql, $params) === 1;
    }
}
