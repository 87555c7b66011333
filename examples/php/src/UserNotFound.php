<?php

// examples/php/src/UserNotFound.php: P0002 "user N does not exist": no
// lhdiscord.users row for that id (is the sync trigger installed?).

declare(strict_types=1);

namespace Lhdiscord;

class UserNotFound extends NotFound
{
}
