<?php

// examples/php/autoload.php: a PSR-4 autoloader for namespace Lhdiscord\
// (src/), for use without Composer. With Composer, drop this file and add
// "autoload": {"psr-4": {"Lhdiscord\\": "src/"}} to composer.json.

declare(strict_types=1);

spl_autoload_register(static function (string $class): void {
    $prefix = 'Lhdiscord\\';
    if (!str_starts_with($class, $prefix)) {
        return;
    }
    $file = __DIR__ . '/src/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
    if (is_file($file)) {
        require $file;
    }
});
